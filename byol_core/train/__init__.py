"""BYOL pretraining: networks (``nets``), the two views (``augment``), loss and EMA
(``byol``), LARS and the schedule (``optim``), one training step (``step``; ``graphed`` as one
CUDA graph), feeding it from the store (``loader``), the loop (``loop``), the crash-resume
state (``resume``), the encoder file (``checkpoint``), warm starts (``warmstart``), DDP
(``distributed``) and the kNN monitor's features (``features``). Reads ``data``, never
``search``; this file imports nothing (DVC's code deps are per file)."""
