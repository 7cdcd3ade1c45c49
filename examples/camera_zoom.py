"""Zoom the camera in.

    python examples/camera_zoom.py [--model MODEL] [--image IN] [--out OUT]
"""

from _common import example_arguments, model_and_image

from lowmem import instructions
from lowmem.pipeline import SpatialEditPipeline


def main() -> None:
    args = example_arguments(__doc__.splitlines()[0]).parse_args()
    model, image = model_and_image(args, "zoom")
    pipe = SpatialEditPipeline.from_folder(model)
    edit = instructions.zoom("in")
    result = pipe.edit(image, edit, steps=args.steps, guidance=args.guidance, resolution=args.resolution, seed=0)
    result.image.save(args.out)
    print(f"{edit.text}\n{result.report.format()}\nsaved {args.out}")


if __name__ == "__main__":
    main()
