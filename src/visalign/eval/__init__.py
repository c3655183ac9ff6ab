"""visalign.eval: benchmark harnesses and statistics over folders of generated images.

* ``geneval_layout``: GenEval's folder layout (``NNNNN/metadata.jsonl``, ``NNNNN/samples/*.png``), read and written;
* ``shapesbench``: ShapesBench, GenEval's scoring rules applied by the ShapesWorld verifier (``visalign eval``);
* ``pass_rate``: pass rates per tag and overall (GenEval's unweighted mean over tags), for every score above;
* ``pass_at_k``: pass@k of a sample folder and the share of prompts never right;
* ``paired``: paired differences of a per-image score between two folders (or evaluations) of the same seeds;
* ``folder_rewards``: a registered reward over every image of a folder, prompt by prompt (for the two above).
"""
