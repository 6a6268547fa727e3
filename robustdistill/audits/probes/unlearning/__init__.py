"""The unlearning group: what an unlearning defence removed and what it kept (class forgetting, backdoor removal)."""
