"""What the chapters run: data, small models, training, probes, experiments and figures."""
