"""Command-line programs: ``roma-match`` (``match``) and ``roma-keyframes`` (``keyframes``), with
their shared options (``model_options``, ``pose_options``). Argument parsing and printing only;
the work is done by the layers below.
"""
