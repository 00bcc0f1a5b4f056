"""Offline music corpora rendered from what pip and Debian packages ship.

Not part of extraction: no module of ``featurestore`` outside this package imports it,
and it imports nothing of ``featurestore`` outside it. It makes data to run the system on:

* :mod:`featurestore.corpus.render`: note events to audio (tinysoundfont, fluidsynth),
  fades and peak normalisation;
* :mod:`featurestore.corpus.scores`: music21 scores to note events (ties joined by
  music21), excerpts at a tempo, ensembles by register;
* :mod:`featurestore.corpus.synth`: GM instrument families, notes and phrases, generated
  multi-instrument pieces;
* :mod:`featurestore.corpus.demo`: the embedded demo data set (``make_demo_data``) and
  its ``demo-data`` command (``python -m featurestore.corpus OUT_DIR``).

``benchmarks/devset.py`` builds the dev benchmark from the same pieces.
"""
