"""Sound beside the video: the ``audio`` config section and the codecs that turn a clip's audio into
tokens of the same packed row as its frames, and tokens back into audio."""
