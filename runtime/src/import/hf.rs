//! Hugging Face checkpoints: `config.json` + `model.safetensors` → [`super::Checkpoint`].
