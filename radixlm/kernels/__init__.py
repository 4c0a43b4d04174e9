"""Native CPU kernels (``csrc/cpu``): the loader (:mod:`.cpu`) and their torch references
(:mod:`.reference`), which define the semantics every kernel is tested against."""
