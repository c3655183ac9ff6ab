"""visalign.eval: benchmark harnesses over GenEval-layout folders (``geneval_layout``, ``shapesbench``)."""
