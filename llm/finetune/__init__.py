"""Supervised fine-tuning on the shared training loop.

    sft_data.py   JSONL pairs and chats read, validated (bad records quarantined), templated, held out by hash
    packing.py    examples packed into windows (attention and positions per example), batches, response loss
    methods.py    full, lora, prefix, adapter: what trains, and what a run may combine them with
    workload.py   the fine-tune as a `llm.train.workload.Workload`: base + method, adapter-only checkpoints
    trainer.py    the driver: prepare the examples, train on Ray Train, measure, publish to MLflow
    base.py       the base: a checkpoint folder, or a registered model fetched from MLflow
    export.py     a fine-tune's checkpoint loaded for inference, or written merged / as base + adapter
    respond.py    greedy responses through the chat template (the before/after samples)
    doc_pairs.py  signature -> docstring pairs from crawled pydoc pages (the demo's SFT set)
"""
