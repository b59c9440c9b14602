"""Files carrying the metadata real generators and cameras write, made with Pillow for the tests.

Field layouts follow what each tool writes: AUTOMATIC1111/Forge a ``parameters`` text chunk (and
the same text in EXIF UserComment, UTF-16 big-endian after ``UNICODE\\0``, for JPEG/WebP),
ComfyUI ``prompt`` (API graph) and ``workflow`` (editor graph) JSON chunks (EXIF Model/Make as
``prompt:``/``workflow:`` in its WebP saver), InvokeAI ``invokeai_metadata`` (3.x+),
``sd-metadata`` and ``Dream`` (2.x), NovelAI ``Software``/``Source``/``Comment``; then the JPEG/WebP
layouts (Civitai, SwarmUI, ComfyUI "Save Image Plus", NovelAI exports), RuinedFooocus, diffusers
Spaces and A1111 stealth metadata in the alpha bits (:func:`more_generator_files`).
"""

from __future__ import annotations

import gzip
import html
import io
import json
import struct
from pathlib import Path

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from conftest import random_photo

A1111_PARAMETERS = (
    "a photo of a lighthouse at dusk, highly detailed\n"
    "Negative prompt: blurry, lowres\n"
    "Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1234567890, Size: 512x512, "
    "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Version: v1.7.0")
FORGE_PARAMETERS = A1111_PARAMETERS.replace("Version: v1.7.0", "Version: f0.0.17v1.8.0rc-latest-276-g29be1da7")
COMFY_PROMPT = {
    "3": {"inputs": {"seed": 156680208700286, "steps": 20, "cfg": 8, "sampler_name": "euler", "scheduler": "normal",
                     "denoise": 1, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
                     "latent_image": ["5", 0]}, "class_type": "KSampler"},
    "4": {"inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}, "class_type": "CheckpointLoaderSimple"},
    "5": {"inputs": {"width": 512, "height": 512, "batch_size": 1}, "class_type": "EmptyLatentImage"},
    "6": {"inputs": {"text": "a lighthouse at dusk", "clip": ["4", 1]}, "class_type": "CLIPTextEncode"},
    "7": {"inputs": {"text": "blurry", "clip": ["4", 1]}, "class_type": "CLIPTextEncode"},
    "8": {"inputs": {"samples": ["3", 0], "vae": ["4", 2]}, "class_type": "VAEDecode"},
    "9": {"inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}, "class_type": "SaveImage"},
}
COMFY_WORKFLOW = {"last_node_id": 9, "last_link_id": 9, "nodes": [
    {"id": 3, "type": "KSampler", "pos": [863, 186], "size": {"0": 315, "1": 262}, "flags": {}, "order": 4,
     "mode": 0, "widgets_values": [156680208700286, "randomize", 20, 8, "euler", "normal", 1]}],
    "links": [[1, 4, 0, 3, 0, "MODEL"]], "groups": [], "config": {}, "extra": {}, "version": 0.4}
INVOKE_METADATA = {"generation_mode": "txt2img", "positive_prompt": "a lighthouse at dusk", "negative_prompt": "",
                   "width": 512, "height": 512, "seed": 42, "rand_device": "cpu", "cfg_scale": 7.5, "steps": 30,
                   "scheduler": "euler", "model": {"key": "a1b2", "hash": "blake3:00", "name": "stable-diffusion-v1-5",
                                                   "base": "sd-1", "type": "main"}, "app_version": "4.2.0"}
INVOKE_SD_METADATA = {"model": "stable diffusion", "model_weights": "stable-diffusion-1.5", "model_hash": "cc6cb27103",
                      "app_id": "invoke-ai/InvokeAI", "app_version": "2.3.0",
                      "image": {"prompt": [{"prompt": "a lighthouse at dusk", "weight": 1.0}], "steps": 50,
                                "cfg_scale": 7.5, "threshold": 0, "perlin": 0, "height": 512, "width": 512,
                                "seed": 42, "seamless": False, "hires_fix": False, "type": "txt2img",
                                "postprocessing": None, "sampler": "k_lms", "variations": []}}
INVOKE_DREAM = '"a lighthouse at dusk" -s 50 -S 42 -W 512 -H 512 -C 7.5 -A k_lms'
NOVELAI_COMMENT = {"prompt": "1girl, lighthouse, dusk", "steps": 28, "height": 1216, "width": 832, "scale": 5.0,
                   "uncond_scale": 1.0, "cfg_rescale": 0.0, "seed": 3825183370, "n_samples": 1,
                   "noise_schedule": "native", "sampler": "k_euler_ancestral", "uc": "lowres, bad anatomy",
                   "request_type": "PromptGenerateRequest"}
XMP_TEMPLATE = (
    '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/">'
    '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description rdf:about="" '
    'xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/">'
    '<Iptc4xmpExt:DigitalSourceType>http://cv.iptc.org/newscodes/digitalsourcetype/{dst}'
    '</Iptc4xmpExt:DigitalSourceType></rdf:Description></rdf:RDF></x:xmpmeta><?xpacket end="w"?>')


def png_with_text(path: Path, texts: dict[str, str], seed: int = 0, compressed: bool = False) -> Path:
    info = PngInfo()
    for key, value in texts.items():
        if compressed:
            info.add_itxt(key, value, zip=True)
        else:
            info.add_text(key, value)
    random_photo(seed).save(path, pnginfo=info)
    return path


def user_comment(text: str) -> bytes:
    """EXIF UserComment as piexif.helper.UserComment.dump(text, encoding="unicode") writes it (A1111)."""
    return b"UNICODE\0" + text.encode("utf-16-be")


def jpeg_with_exif(path: Path, tags: dict[int, object] | None = None, sub: dict[int, object] | None = None,
                   seed: int = 0, fmt: str = "JPEG", xmp: str | None = None) -> Path:
    exif = Image.Exif()
    for tag, value in (tags or {}).items():
        exif[tag] = value
    if sub:
        ifd = exif.get_ifd(0x8769)
        ifd.update(sub)
    extra = {"xmp": xmp.encode("utf-8")} if xmp else {}
    random_photo(seed).save(path, fmt, exif=exif.tobytes(), quality=90, **extra)
    return path


def camera_jpeg(path: Path) -> Path:
    """What a camera writes: Make, Model, Software (firmware), exposure settings in the EXIF IFD."""
    return jpeg_with_exif(path, {0x010F: "Canon", 0x0110: "Canon EOS 5D Mark IV", 0x0131: "Firmware Version 1.3.3",
                                 0x0132: "2024:06:01 18:22:10"},
                          {0x829A: (1, 250), 0x829D: (8, 1), 0x8827: 400, 0x9003: "2024:06:01 18:22:10",
                           0x920A: (50, 1)})


def generator_files(folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, substring the source must contain), one per generator layout."""
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "a1111_png": (png_with_text(folder / "a1111.png", {"parameters": A1111_PARAMETERS}), "AUTOMATIC1111"),
        "forge_png": (png_with_text(folder / "forge.png", {"parameters": FORGE_PARAMETERS}), "Forge"),
        "a1111_jpeg": (jpeg_with_exif(folder / "a1111.jpg", sub={0x9286: user_comment(A1111_PARAMETERS)}),
                       "AUTOMATIC1111"),
        "a1111_webp": (jpeg_with_exif(folder / "a1111.webp", sub={0x9286: user_comment(A1111_PARAMETERS)},
                                      fmt="WEBP"), "AUTOMATIC1111"),
        "comfyui_png": (png_with_text(folder / "comfy.png", {"prompt": json.dumps(COMFY_PROMPT),
                                                             "workflow": json.dumps(COMFY_WORKFLOW)}),
                        "ComfyUI, model v1-5-pruned-emaonly.safetensors"),
        "comfyui_workflow_only": (png_with_text(folder / "comfy_wf.png", {"workflow": json.dumps(COMFY_WORKFLOW)}),
                                  "ComfyUI"),
        "comfyui_webp": (jpeg_with_exif(folder / "comfy.webp", {0x0110: "prompt:" + json.dumps(COMFY_PROMPT),
                                                                0x010F: "workflow:" + json.dumps(COMFY_WORKFLOW)},
                                        fmt="WEBP"), "ComfyUI"),
        "invokeai_v3": (png_with_text(folder / "invoke3.png", {"invokeai_metadata": json.dumps(INVOKE_METADATA)},
                                      compressed=True), "InvokeAI 4.2.0, model stable-diffusion-v1-5"),
        "invokeai_v2": (png_with_text(folder / "invoke2.png", {"sd-metadata": json.dumps(INVOKE_SD_METADATA),
                                                               "Dream": INVOKE_DREAM}), "InvokeAI"),
        "invokeai_dream": (png_with_text(folder / "dream.png", {"Dream": INVOKE_DREAM}), "InvokeAI"),
        "novelai": (png_with_text(folder / "novelai.png", {
            "Title": "AI generated image", "Description": "1girl, lighthouse, dusk", "Software": "NovelAI",
            "Source": "NovelAI Diffusion V4 4F49EC75", "Generation time": "5.2",
            "Comment": json.dumps(NOVELAI_COMMENT)}), "NovelAI"),
    }


# --- JPEG/WebP and more tools: each written the way that tool writes it ---------------------------

CIVITAI_PARAMETERS = (
    "a lighthouse at dusk, masterpiece\nNegative prompt: blurry\n"
    "Steps: 30, CFG scale: 5, Sampler: DPM++ 2M Karras, Seed: 42, Size: 832x1216, Clip skip: 2, "
    "Hires upscale: 1.5, Hires steps: 12, Hires upscaler: 4x-UltraSharp, Denoising strength: 0.4, "
    'Created Date: 2024-06-01T10:00:00.0000000Z, Civitai resources: [{"type":"checkpoint","modelVersionId":1}]')
SWARM_PARAMETERS = {"sui_image_params": {
    "prompt": "a lighthouse at dusk", "negativeprompt": "", "model": "Flux/flux1-dev-fp8", "seed": 305223794,
    "steps": 25, "cfgscale": 1.0, "aspectratio": "1:1", "width": 1024, "height": 1024, "sampler": "euler",
    "scheduler": "normal", "swarm_version": "0.9.1.1", "date": "2024-08-07"}, "sui_extra_data": {"date": "2024-08-07"}}
RUINED_FOOOCUS = {"Prompt": "a lighthouse at dusk", "Negative": "", "steps": 30, "cfg": 8.0, "width": 1152,
                  "height": 896, "seed": 123456, "sampler_name": "dpmpp_2m_sde_gpu", "scheduler": "karras",
                  "base_model_name": "sd_xl_base_1.0_0.9vae.safetensors", "base_model_hash": "e6bb9ea85b",
                  "loras": [], "start_step": 0, "denoise": 1.0, "clip_skip": 1, "software": "RuinedFooocus"}
FOOOCUS = {"prompt": "a lighthouse at dusk", "negative_prompt": "", "styles": "['Fooocus V2', 'Fooocus Enhance']",
           "performance": "Speed", "resolution": "(1152, 896)", "guidance_scale": 4, "sharpness": 2,
           "adm_guidance": "(1.5, 0.8, 0.3)", "base_model": "juggernautXL_v8Rundiffusion.safetensors",
           "refiner_model": "None", "refiner_switch": 0.5, "sampler": "dpmpp_2m_sde_gpu", "scheduler": "karras",
           "seed": "123456", "version": "Fooocus v2.5.5"}
DIFFUSERS_SPACE = {"prompt": "a lighthouse at dusk", "negative_prompt": "lowres", "resolution": "832 x 1216",
                   "guidance_scale": 7, "num_inference_steps": 28, "style_preset": "(None)", "seed": 1234,
                   "sampler": "Euler a", "Model": "Animagine XL 3.1", "Model hash": "e3c47aedb0"}
XMP_PROPERTY = (
    '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/">'
    '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description rdf:about="" '
    'xmlns:exif="http://ns.adobe.com/exif/1.0/"><exif:UserComment>{value}</exif:UserComment>'
    '</rdf:Description></rdf:RDF></x:xmpmeta><?xpacket end="w"?>')


def xmp_property(value: str) -> str:
    """An XMP packet holding ``value`` as the text of one property (exiftool's XMP-exif:UserComment)."""
    return XMP_PROPERTY.format(value=html.escape(value, quote=False))


def novelai_webp_comment() -> str:
    """NovelAI's WebP export: every PNG text field, as one JSON object in EXIF UserComment."""
    return json.dumps({"Title": "NovelAI generated image", "Description": "1girl, lighthouse, dusk",
                       "Software": "NovelAI", "Source": "NovelAI Diffusion V4.5 4BDE2A90", "Generation time": "4.1",
                       "Comment": json.dumps(NOVELAI_COMMENT)})


def save_image_plus(path: Path, fmt: str, quoted: bool = False) -> Path:
    """ComfyUI "Save Image Plus": ``exif[UserComment] = json.dumps({"prompt", "workflow"})`` in IFD0
    (one fork stores that JSON once more as a JSON string: ``quoted``)."""
    image = random_photo(2)
    exif = image.getexif()
    text = json.dumps({"prompt": COMFY_PROMPT, "workflow": COMFY_WORKFLOW})
    exif[0x9286] = json.dumps(text) if quoted else text
    image.save(path, fmt, exif=exif.tobytes(), quality=90)
    return path


def stealth_png(path: Path, text: str, compressed: bool = True, seed: int = 3) -> Path:
    """The stealth-pnginfo writer: signature, 32-bit bit count, payload, in the alpha LSBs, column by column."""
    image = random_photo(seed, (128, 96)).convert("RGBA")
    payload = gzip.compress(text.encode("utf-8")) if compressed else text.encode("utf-8")
    signature = b"stealth_pngcomp" if compressed else b"stealth_pnginfo"
    bits = np.unpackbits(np.frombuffer(signature + struct.pack(">I", len(payload) * 8) + payload, np.uint8))
    pixels = np.array(image)
    alpha = pixels[..., 3].T.copy()  # column-major order: x outer, y inner
    flat = alpha.ravel()
    flat[:len(bits)] = (flat[:len(bits)] & 0xFE) | bits
    pixels[..., 3] = flat.reshape(alpha.shape).T
    Image.fromarray(pixels, "RGBA").save(path)
    return path


def more_generator_files(folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, substring the source must contain) for the JPEG/WebP layouts and later tools."""
    folder.mkdir(parents=True, exist_ok=True)
    le = b"UNICODE\0" + CIVITAI_PARAMETERS.encode("utf-16-le")
    return {
        "civitai_jpeg_utf16le": (jpeg_with_exif(folder / "civitai.jpg", sub={0x9286: le}), "Civitai"),
        "a1111_webp_utf16le": (jpeg_with_exif(folder / "a1111_le.webp", sub={0x9286: b"UNICODE\0"
                                              + A1111_PARAMETERS.encode("utf-16-le")}, fmt="WEBP"), "AUTOMATIC1111"),
        "a1111_jpeg_ascii": (jpeg_with_exif(folder / "a1111_ascii.jpg", sub={0x9286: b"ASCII\0\0\0"
                                            + A1111_PARAMETERS.encode()}), "AUTOMATIC1111"),
        "a1111_jpeg_bom": (jpeg_with_exif(folder / "a1111_bom.jpg", sub={0x9286: b"UNICODE\0"
                                          + A1111_PARAMETERS.encode("utf-16")}), "AUTOMATIC1111"),
        "swarmui_png": (png_with_text(folder / "swarm.png", {"parameters": json.dumps(SWARM_PARAMETERS, indent=2)},
                                      compressed=True), "SwarmUI 0.9.1.1, model Flux/flux1-dev-fp8"),
        "swarmui_jpeg": (jpeg_with_exif(folder / "swarm.jpg", sub={0x9286: user_comment(json.dumps(SWARM_PARAMETERS))}),
                         "SwarmUI"),
        "save_image_plus_jpeg": (save_image_plus(folder / "plus.jpg", "JPEG"), "ComfyUI"),
        "save_image_plus_webp": (save_image_plus(folder / "plus.webp", "WEBP"), "ComfyUI"),
        "save_image_plus_quoted": (save_image_plus(folder / "plus_quoted.webp", "WEBP", quoted=True), "ComfyUI"),
        "comfyui_xmp_webp": (jpeg_with_exif(folder / "comfy_xmp.webp", fmt="WEBP", xmp=xmp_property(
            json.dumps({"prompt": COMFY_PROMPT, "workflow": COMFY_WORKFLOW}))), "ComfyUI"),
        "novelai_webp": (jpeg_with_exif(folder / "novelai.webp", {0x010E: "1girl, lighthouse, dusk"},
                                        {0x9286: user_comment(novelai_webp_comment())}, fmt="WEBP"),
                         "NovelAI (NovelAI Diffusion V4.5"),
        "novelai_xmp_webp": (jpeg_with_exif(folder / "novelai_xmp.webp", fmt="WEBP",
                                            xmp=xmp_property(novelai_webp_comment())), "NovelAI"),
        "fooocus": (png_with_text(folder / "fooocus.png", {"parameters": json.dumps(FOOOCUS), "fooocus_scheme": "fooocus"}),
                    "Fooocus v2.5.5, model juggernautXL"),
        "ruined_fooocus": (png_with_text(folder / "ruined.png", {"parameters": json.dumps(json.dumps(RUINED_FOOOCUS))}),
                           "RuinedFooocus, model sd_xl_base_1.0"),
        "ruined_fooocus_plain": (png_with_text(folder / "ruined2.png", {"parameters": json.dumps(RUINED_FOOOCUS)}),
                                 "RuinedFooocus"),
        "diffusers_space": (png_with_text(folder / "space.png", {"parameters": json.dumps(DIFFUSERS_SPACE)}),
                            "diffusers (Hugging Face Space), model Animagine XL 3.1"),
        "stealth_pngcomp": (stealth_png(folder / "stealth_comp.png", A1111_PARAMETERS), "AUTOMATIC1111"),
        "stealth_pnginfo": (stealth_png(folder / "stealth_info.png", A1111_PARAMETERS, compressed=False),
                            "AUTOMATIC1111"),
        "stealth_novelai": (stealth_png(folder / "stealth_nai.png", novelai_webp_comment()), "NovelAI"),
    }


def sign_c2pa(c2pa_fixtures, source: bytes, dst: str, fmt: str = "image/png", remote: str | None = None) -> bytes:
    """``source`` with a C2PA manifest declaring IPTC source type ``dst``, signed with the fixtures' test
    certificate (valid, signer on no trust list), or with ``remote`` only a link to one."""
    import c2pa

    manifest = {"claim_generator_info": [{"name": "diffsleuth-test", "version": "0.1"}], "format": fmt,
                "assertions": [{"label": "c2pa.actions", "data": {"actions": [{
                    "action": "c2pa.created", "softwareAgent": {"name": "Test Model", "version": "2"},
                    "digitalSourceType": f"http://cv.iptc.org/newscodes/digitalsourcetype/{dst}"}]}}]}
    certs = c2pa_fixtures / "test-certs"
    signer = c2pa.Signer.from_info(c2pa.C2paSignerInfo(
        alg=c2pa.C2paSigningAlg.ES256, sign_cert=(certs / "es256.pub").read_bytes(),
        private_key=(certs / "es256.pem").read_bytes(), ta_url=None))
    builder = c2pa.Builder(json.dumps(manifest))
    if remote:
        builder.set_no_embed()
        builder.set_remote_url(remote)
    out = io.BytesIO()
    builder.sign(signer, fmt, io.BytesIO(source), out)
    return out.getvalue()
