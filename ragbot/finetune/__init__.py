"""Fine-tuning: feedback -> training files -> validation -> jobs -> swap the model in.

Data flows one way: ``data`` builds training files from question sets, saved conversations
and plain prompt/answer files; ``validate`` checks them and estimates tokens and cost;
``jobs`` runs them on any OpenAI-compatible fine-tuning API and keeps local job records (``ragbot.storage.jobs``);
``train`` trains a LoRA adapter for a local GGUF model on this machine (torch, peft) and writes it as a
GGUF adapter llama.cpp applies; ``swap`` points the answer or rewrite role at the resulting model.
"""
