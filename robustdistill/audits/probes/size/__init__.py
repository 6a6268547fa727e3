"""The ``size`` probe of the classifier family: parameters and MACs of each model."""
