"""Defences applied to a trained model: unlearning (``sfd``: a one-step generator that forgets a class) and backdoor
removal (``skd-cag``). Each registers as a trainer, so ``robustdistill train METHOD`` runs it."""
