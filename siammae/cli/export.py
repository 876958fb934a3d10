"""``siammae export``: the frame encoder of a checkpoint as a timm ViT state dict in safetensors."""

import click

from siammae.cli import Command
from siammae.cli.propagate import encoder_options


# fmt: off
@click.command(cls=Command)
@encoder_options
@click.option("--out", required=True, type=click.Path(),
              help="Output .safetensors file (--format siammae) or folder (--format timm-hub).")
@click.option("--format", "fmt", type=click.Choice(["siammae", "timm-hub"]), default="siammae", show_default=True,
              help="siammae: one .safetensors file with metadata; timm-hub: a folder with config.json + "
              "model.safetensors, as timm saves for the Hugging Face Hub.")
# fmt: on
def export(checkpoint, weights, weights_prefix, out, fmt):
    """Write the encoder in timm's layout, with the timm model name and patch/image size as metadata.

    \b
    The file loads strictly into timm:
        from safetensors import safe_open; import json, timm
        meta = safe_open(OUT, "pt").metadata()
        vit = timm.create_model(meta["timm_model"], num_classes=0, **json.loads(meta["timm_kwargs"]))
        vit.load_state_dict(safetensors.torch.load_file(OUT), strict=True)
    (for patch 16 at 224: simply timm.create_model(name, num_classes=0)). It is also a valid
    --checkpoint for `siammae propagate`. A VideoMAE / MAE-ST run's space-time encoder, which timm has no
    architecture for, is written as its own state dict with the run's resolved config as JSON in the
    metadata ("format": "siammae-clip-encoder"); `siammae propagate` loads it and feeds each frame as a
    clip of tubelet copies.

    \b
    --format timm-hub writes a folder that timm loads by name, and that can be uploaded to the
    Hugging Face Hub as is:
        timm.create_model("local-dir:OUT", pretrained=True, num_classes=0)
        siammae propagate --checkpoint local-dir:OUT ...   (or hf-hub:owner/repo once uploaded)
    """
    from siammae.encoders import export_encoder, export_timm_hub, load_encoder

    if fmt == "siammae" and not out.endswith(".safetensors"):
        raise click.BadParameter("the output file must end in .safetensors", param_hint="--out")
    encoder, info = load_encoder(checkpoint, weights=weights, prefix=weights_prefix)
    if fmt == "timm-hub":
        path = export_timm_hub(encoder, info, out)
        click.echo(
            f"wrote {path}/ (config.json + model.safetensors): {info.timm_model}, from {info.source}; "
            f"load it with --checkpoint local-dir:{path}"
        )
        return
    path = export_encoder(encoder, info, out)
    n = sum(p.numel() for p in encoder.parameters())
    if info.frame_input:
        click.echo(
            f"wrote {path}: the {info.timm_model} clip encoder (siammae layout: its weights, the run's "
            f"config in the metadata), {n / 1e6:.1f}M parameters, from {info.source}"
        )
        return
    kwargs = {k: v for k, v in info.timm_kwargs().items() if k != "num_classes"}
    click.echo(f"wrote {path}: {info.timm_model} {kwargs}, {n / 1e6:.1f}M parameters, from {info.source}")
