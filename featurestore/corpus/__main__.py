"""``python -m featurestore.corpus OUT_DIR [--seed N] [--scale X]``: the demo corpus."""

from featurestore.corpus.demo import demo_data

demo_data(prog_name="python -m featurestore.corpus")
