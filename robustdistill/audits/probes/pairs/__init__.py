"""Probes comparing the teacher with another model of the classifier family: ``transfer``, ``agreement`` and
``retention`` (one file each), and their shared pair-attack base."""
