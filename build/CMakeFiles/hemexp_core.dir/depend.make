# Empty dependencies file for hemexp_core.
# This may be replaced when dependencies are built.
