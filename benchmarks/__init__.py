import finetune  # noqa: F401  first, so a mismatched torchvision is hidden (finetune/torchvision_guard.py)
