"""Typer options shared by every command that loads a model (one definition, one help text)."""

import typer

ModelOpt = typer.Option("efficientnet_lite0", "--model", "-m",
                        help="Bundled name, model file (.pt TorchScript, .pt2), "
                             "'package.module:factory' or 'torchvision:NAME'.")
WeightsOpt = typer.Option(None, "--weights", help="State dict (.safetensors or .pt) for a factory.")
LabelsOpt = typer.Option(None, "--labels", help="Class names: text (one per line) or JSON.")
SizeOpt = typer.Option(None, "--input-size", help="Model input size in pixels.")
MeanOpt = typer.Option(None, "--mean", help="Normalisation mean, e.g. 0.485,0.456,0.406.")
StdOpt = typer.Option(None, "--std", help="Normalisation std, e.g. 0.229,0.224,0.225.")
ResizeOpt = typer.Option(None, "--resize", help="center_crop, squash or pad.")
DeviceOpt = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N.")
TrustOpt = typer.Option(False, "--trust-model",
                        help="Allow model files that are programs or need full unpickling.")
