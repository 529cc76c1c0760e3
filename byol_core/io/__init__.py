"""Files and processes: atomic writes and a stage's all-or-nothing commit (``storage``), the
project lock (``locks``), and Linux process plumbing (``proc``, standard library only).
Imports no other byol_core package; this file imports nothing."""
