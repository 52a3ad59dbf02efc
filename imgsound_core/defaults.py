"""The default models, by hub id: importable without torch, so that building the command line stays quick."""

DEFAULT_IMAGE_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
DEFAULT_AUDIO_MODEL = "auffusion/auffusion-full-no-adapter"
DEFAULT_IF_STAGE_1 = "DeepFloyd/IF-I-M-v1.0"
DEFAULT_IF_STAGE_2 = "DeepFloyd/IF-II-M-v1.0"
CLIP_MODEL_ID = "openai/clip-vit-base-patch16"  # the paper's CLIP evaluator (ViT-B/16)
CLAP_MODEL_ID = "laion/clap-htsat-unfused"  # the paper's CLAP evaluator
