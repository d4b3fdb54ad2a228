"""Reading and fetching models: GGUF files, Hugging Face folders, tokenizers, chat templates, the
model registry and cache paths. Knows nothing about effort or runtimes."""
