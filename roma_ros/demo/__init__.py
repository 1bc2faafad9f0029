"""``make demo`` / ``roma-demo`` (``run``), its photo pairs with known homographies
(``photo_pairs``) and the synthetic 3D scene with exact depth (``synthetic_scene``).

Tests and benchmarks use the same data.
"""
