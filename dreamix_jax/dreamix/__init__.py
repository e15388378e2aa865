"""The Dreamix method: corruption, mixed finetuning, image-to-video, editing pipelines."""
