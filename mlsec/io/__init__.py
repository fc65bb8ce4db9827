"""Loading what a user hands over: model files, entry points and data, inspected before use."""
