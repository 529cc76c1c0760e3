"""Embeddings and search: every prepared image through the ONNX encoder (``embed``), one
gallery with one exact-or-approximate search (``gallery``, the faiss index in ``ann``), and
nearest images to a query (``neighbours``). Reads ``data``, never ``train``; this file
imports nothing (DVC's code deps are per file)."""
