"""The Hugging Face Hub side: which files make the SpatialEdit release (`release`), fetching them into
huggingface_hub's cache (`fetch`), turning them into a model folder (`download`), and `--model` given
as a Hub id (`models`). Nothing here imports torch at import time."""
