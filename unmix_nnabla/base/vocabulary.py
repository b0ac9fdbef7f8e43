"""The project's words, in one place that imports nothing: the sources, X-UMX's branch order,
the dataset kinds and the augmentations."""

# MUSDB18's four targets, in the order of separation's outputs and the CLIs' defaults
SOURCES = ("vocals", "drums", "bass", "other")
# X-UMX's branches, in the order of Sony's code and of its x-umx.h5
XUMX_BRANCHES = ("bass", "drums", "vocals", "other")
# training datasets (--dataset): musdb, and the four folder kinds of open-unmix-pytorch
DATASET_KINDS = ("musdb", "aligned", "sourcefolder", "trackfolder_fix", "trackfolder_var")
# source augmentations of training samples (--source-augmentations)
AUGMENTATIONS = ("gain", "channelswap")
