"""Membership-inference probes of the classifier family: ``mia-loss``, ``mia-confidence`` and ``mia-lira`` (one
file each) on the shared :class:`~robustdistill.audits.probes.privacy.membership.MembershipProbe`. The scores, LiRA
statistics, metrics and shadow training they use are in :mod:`robustdistill.attacks.privacy`."""
