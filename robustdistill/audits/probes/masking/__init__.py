"""The ``masking`` probe of the classifier family (the checks' comparisons are in robustdistill.audits.masking)."""
