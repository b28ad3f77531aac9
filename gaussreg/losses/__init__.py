"""One module per loss family (stem), each: public functions -> validation -> compiled op."""
