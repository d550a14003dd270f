"""robustkd: fine-tune foundation models against a cached frozen teacher."""
