"""The data a pretraining reads: source readers (``sources/``), the source listing
(``scan``), conversion through a cache (``cache``, ``filesplit``), ingest into the sharded
store (``ingest``, ``store``), its typed card and layout (``card``), and reading it back
(``prepared``). Imports nothing from ``train`` or ``search``; this file imports nothing, so
a stage depends only on the modules it uses (DVC's code deps are per file)."""
