"""Embedded procedural datasets ("hng-synth"): shape families, analytic ray caster, zip writer, density oracle."""
from training.synthetic.oracle import oracle_field
from training.synthetic.render import render_images, render_object, sample_pose
from training.synthetic.shapes import FAMILIES, ObjectSpec, Primitive, make_object
from training.synthetic.writer import load_gt, write_dataset_zip

__all__ = ["FAMILIES", "ObjectSpec", "Primitive", "make_object", "render_object", "render_images", "sample_pose",
           "oracle_field", "write_dataset_zip", "load_gt"]
