"""Probes of the language-model family: refusal and task behaviour, GCG jailbreaks with teacher-to-student transfer,
and membership inference against the teacher's fine-tuning data."""
