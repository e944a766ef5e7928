"""One small module per output family; each maps the model to the files it wants.

`every.all_files` runs them all; the package itself imports none of them, so a command that
needs one target (`validate` checks migrations only) loads only that one.
"""
