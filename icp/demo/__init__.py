"""`icp demo`: a node, the Helsinki demo city, simulated crews and a sensor feed in one command."""
