"""The memory-budget API: quantize while loading, plan for a budget, stream what does not fit.

    python examples/memory_budget.py [--model MODEL] [--budget 24GB] [--image IN] [--out OUT]
"""

import lowmem
from _common import example_arguments, model_and_image
from lowmem import instructions
from lowmem.pipeline import default_device
from lowmem.spotedit import SpotConfig
from lowmem.tiny.random_model import tiny_model_budget


def main() -> None:
    parser = example_arguments(__doc__.splitlines()[0])
    parser.add_argument("--budget", default=None, help="memory budget (default: 24GB, or a small one on the tiny model)")
    args = parser.parse_args()
    budget = args.budget or (tiny_model_budget(default_device()) if args.model is None else "24GB")
    model, image = model_and_image(args, "rotate")
    # One budget drives everything: the planner keeps what fits on the device and streams the rest.
    # `with` gives the slots, pinned memory and streamed blocks' files back as soon as the edits are done.
    with lowmem.load(model, memory_budget=budget, quantization="nf4", resolution=args.resolution, spot=True,
                     guidance=args.guidance) as pipe:
        print(pipe.offload.plan.format_table())
        result = pipe.edit(image, instructions.rotate(args.object, "rear"), steps=args.steps, guidance=args.guidance,
                           resolution=args.resolution, seed=0, spot=SpotConfig(threshold="auto"))
    result.image.save(args.out)
    print(f"{result.report.format()}\nsaved {args.out}")


if __name__ == "__main__":
    main()
