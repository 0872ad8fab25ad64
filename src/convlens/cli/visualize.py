"""``convlens visualize`` and ``convlens activations``: feature visualization from the shell.

:func:`register` adds both commands to the app. Errors follow the CLI's style
(:mod:`convlens.cli._common`): one ``error: ...`` line on stderr and exit code 2.

Examples::

    convlens visualize --layer blocks.8 --channels 0-15 --out vis/
    convlens visualize --class tabby --class 130 --steps 512 --out classes/
    convlens visualize --layer blocks.6 --deepdream cat.jpg --out dream/
    convlens activations cat.jpg --layer blocks.4 --filters --out acts/
"""

from __future__ import annotations

import sys
from contextlib import nullcontext
from pathlib import Path

import typer

from convlens.cli._common import (
    ModelOptions,
    check_max_pixels,
    console,
    friendly_errors,
    max_pixels_option,
    model_input,
    prepare_out,
    read_photo,
    with_model_options,
)
from convlens.cli._progress import cli_progress
from convlens.errors import ObjectiveError
from convlens.files import claim_output, save_image_atomic, write_json_atomic


@friendly_errors
@with_model_options
def visualize(
    layer: str | None = typer.Option(None, "--layer", "-l",
                                     help="Layer whose channels to visualize (see `layers`)."),
    channels: str | None = typer.Option(None, "--channels", "-c",
                                        help="Channels, e.g. 0-15 or 3,5,9 (default: the "
                                             "first 16)."),
    classes: list[str] = typer.Option([], "--class",
                                      help="Class NAME or INDEX; repeat for several."),
    neuron: bool = typer.Option(False, "--neuron",
                                help="Excite the centre neuron of each channel instead of the "
                                     "whole channel."),
    deepdream: Path | None = typer.Option(None, "--deepdream",
                                          help="Start from this photo; with --layer and no "
                                               "--channels, DeepDream the whole layer."),
    steps: int = typer.Option(256, "--steps", min=0, max=1_000_000,
                              help="Optimiser steps (0 writes the start images)."),
    size: int | None = typer.Option(None, "--size", min=8, max=4096,
                                    help="Image size in pixels, 8-4096 (default: the "
                                         "model's)."),
    seed: int = typer.Option(0, "--seed", min=0, max=2**63 - 1,
                             help="Seed of the noise and the transforms (0 or more)."),
    lr: float | None = typer.Option(None, "--lr",
                                    help="Adam learning rate, > 0 (default: the "
                                         "parameterisation's)."),
    param: str = typer.Option("fft", "--param", help="fft, pixel or cppn."),
    transforms: str = typer.Option("standard", "--transforms", help="standard, lucid or none."),
    out: Path = typer.Option(Path("convlens-vis"), "--out", "-o",
                             help="Output folder (created if missing)."),
    max_pixels: int | None = max_pixels_option(),
    *, model_options: ModelOptions,
) -> None:
    """Render feature visualizations: one PNG per objective, grid.png and results.json.

    Of the model options, --resize and --max-pixels apply to the --deepdream photo (it
    starts as the model sees it: at --input-size, cropped, squashed or padded); without
    --deepdream there is no photo and they are refused.
    """
    # lazy: --help start-up (torch)
    from convlens.visualization import optimize
    from convlens.visualization.goals import objectives_for, start_photo

    optimize.check_arguments(steps=steps, size=size, lr=lr, seed=seed)
    if deepdream is None:
        given = [name for name, value in (("--resize", model_options.resize),
                                          ("--max-pixels", max_pixels)) if value is not None]
        if given:
            raise ObjectiveError(f"{' and '.join(given)} apply to the --deepdream photo; "
                                 "without --deepdream the images start from noise")
    check_max_pixels(max_pixels)
    photo = read_photo(deepdream, max_pixels) if deepdream is not None else None
    prepare_out(out)
    classifier = model_options.load()
    goals = objectives_for(classifier, layer=layer, channels=channels, classes=classes,
                           neuron=neuron, whole_layer=deepdream is not None)
    init = None if photo is None else start_photo(classifier, photo, size=size,
                                                  resize=model_options.resize is not None)
    on_terminal = sys.stderr.isatty()  # a bar on a terminal; nothing in pipes and logs
    with cli_progress(terminal=True) if on_terminal else nullcontext(False) as progress:
        res = optimize.visualize(classifier, goals, size=size, steps=steps, seed=seed, lr=lr,
                                 param=param, transforms=transforms, init=init,
                                 progress=progress)
    final_values = res.trace[-1].tolist() if len(res.trace) else [None] * len(goals)
    with claim_output(out, what="convlens visualize"):  # every file atomic and listed
        paths = res.save(out)
        write_json_atomic(out / "results.json", {
            "model": classifier.name, "steps": len(res.trace),
            "size": list(res.images.shape[-2:]), "seed": seed, "param": param,
            "transforms": transforms, "seconds": round(res.seconds, 2),
            "deepdream": str(deepdream) if deepdream else None,
            "resize": model_options.resize,
            "images": [{"objective": name, "file": path.name, "final_value": value}
                       for name, path, value in zip(res.names, paths, final_values)],
            "grid": "grid.png",
        })
    console.print(f"wrote {len(goals)} visualization(s) and grid.png to {out}/ "
                  f"({res.seconds:.0f} s)", markup=False, highlight=False)


@friendly_errors
@with_model_options
def activations(
    image: Path = typer.Argument(..., help="The photo."),
    layer: str | None = typer.Option(None, "--layer", "-l",
                                     help="Layer to show (default: the last convolutional "
                                          "feature map)."),
    top: int = typer.Option(64, "--top", min=1, help="Show the N most active channels."),
    normalize: str = typer.Option("layer", "--normalize",
                                  help="layer: one colour scale; channel: each map its own."),
    filters: bool = typer.Option(False, "--filters",
                                 help="Also write the first convolution's filters."),
    out: Path = typer.Option(Path("convlens-activations"), "--out", "-o",
                             help="Output folder (created if missing)."),
    max_pixels: int | None = max_pixels_option(),
    *, model_options: ModelOptions,
) -> None:
    """Write a grid of a layer's activation maps for IMAGE, most active channels first.

    IMAGE goes through the model's preprocessing, so --input-size, --resize, --mean and
    --std change what the layer sees.
    """
    # lazy: --help start-up (torch, Pillow)
    from convlens.io.images import safe_output_name
    from convlens.visualization.inspection import activation_maps, filter_grid, maps_grid

    if normalize not in ("layer", "channel"):
        raise ObjectiveError(f"--normalize must be 'layer' or 'channel', got {normalize!r}")
    check_max_pixels(max_pixels)
    photo = read_photo(image, max_pixels)
    prepare_out(out)
    classifier = model_options.load()
    if layer is None:
        layer = classifier.default_layer()
    stem = safe_output_name(image, set())
    maps, order = activation_maps(classifier, model_input(classifier, photo), layer)
    path = out / f"{stem}.{layer}.activations.png"
    with claim_output(out, what="convlens activations"):
        save_image_atomic(maps_grid(maps, order, top=top, normalize=normalize), path,
                          format="PNG")
        if filters:
            save_image_atomic(filter_grid(classifier), out / "filters.png", format="PNG")
    means = maps.mean(dim=(1, 2))
    best = ", ".join(f"#{int(c)} ({float(means[c]):.3g})" for c in order[:5])
    console.print(f"{layer}: {maps.shape[0]} channels of {maps.shape[1]}x{maps.shape[2]}; "
                  f"most active: {best}", markup=False, highlight=False)
    console.print(f"wrote {path}", markup=False, highlight=False)
    if filters:
        console.print(f"wrote {out / 'filters.png'}", markup=False, highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``visualize`` and ``activations`` to the main app."""
    app.command("visualize")(visualize)
    app.command("activations")(activations)
