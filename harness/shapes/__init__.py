"""The Shapes world: a procedural text-to-image benchmark with a GenEval-faithful verifier.

Images are 64x64 RGB on a flat grey background (215, 215, 215) holding filled circles, squares and upward
isosceles triangles (height = base) in red, green, blue or yellow, drawn at 4x and box-downsampled so edges are
anti-aliased. Prompts use GenEval's wording and its six tags (single_object, two_object, counting, colors,
position, color_attr) and carry GenEval-format metadata, so the same rule scorer (``evals.geneval``) grades them.

The world's core modules (import the one you need; this package imports nothing heavy):

* ``harness.shapes.prompts``: vocabulary, the 126-prompt set, train/held-out splits, prompt parsing and
  metadata (JSONL) validation;
* ``harness.shapes.render``: scenes that satisfy (or break exactly one clause of) a prompt, the renderer, the
  scene's ground-truth detections, and quality damage (blur, noise, blob) for reward training;
* ``harness.shapes.detect``: the verifier's detector: nearest-palette colour segmentation, connected components
  and circle/square/triangle template matching by IoU (the score GenEval's thresholds apply to).

The reward that ties them together is ``rewards.shapes_geneval.ShapesGenEval``. The design follows the measured
prototype in ``shared/reference/shapes-probe.md`` (verifier 100% on fresh renders there).
"""
