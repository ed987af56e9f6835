"""Generation: instructions from knowledge-graph triples or from passages."""
