"""Rotate an object to a canonical view.

    python examples/rotate_object.py [--model MODEL] [--image IN] [--out OUT]
"""

from _common import example_arguments, model_and_image

from lowmem import instructions
from lowmem.pipeline import SpatialEditPipeline


def main() -> None:
    args = example_arguments(__doc__.splitlines()[0]).parse_args()
    model, image = model_and_image(args, "rotate")
    pipe = SpatialEditPipeline.from_folder(model)
    edit = instructions.rotate(args.object, "front left")
    result = pipe.edit(image, edit, steps=args.steps, guidance=args.guidance, resolution=args.resolution, seed=0)
    result.image.save(args.out)
    print(f"{edit.text}\n{result.report.format()}\nsaved {args.out}")


if __name__ == "__main__":
    main()
