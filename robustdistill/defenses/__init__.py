"""Defences applied to a trained model: unlearning (sfd, skd_cag)."""
