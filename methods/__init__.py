"""Update rules, one file each. ``METHODS`` maps the public name (== file stem == module ``NAME``) to
its module; adding a method is one new file and one line here (the smoke tests loop over this dict).
"""

from harness.registry import Registry

METHODS = Registry("method", {
    "drpo": "methods.drpo",
    "dpo1": "methods.dpo1",
    "pso": "methods.pso",
    "ngrpo": "methods.ngrpo",
    "draft": "methods.draft",
    "vggflow": "methods.vggflow",
})
