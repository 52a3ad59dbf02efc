"""The service view of /metrics: Ray's per-process series summed over the labels that only name the process."""

from __future__ import annotations

from serve.metrics import service_exposition

NODE_A = """# HELP ray_imgsound_samples_generated_total Samples generated and returned
# TYPE ray_imgsound_samples_generated_total counter
ray_imgsound_samples_generated_total{WorkerId="w1",application="imgsound",deployment="Driver",replica="r1"} 3.0
ray_imgsound_samples_generated_total{Component="core_worker",WorkerId="w2",deployment="Driver",replica="r2"} 4.0
# HELP ray_imgsound_unet_batch_samples Samples in one UNet forward
# TYPE ray_imgsound_unet_batch_samples histogram
ray_imgsound_unet_batch_samples_bucket{WorkerId="w3",le="1.0",model="image",replica="u1"} 1.0
ray_imgsound_unet_batch_samples_bucket{WorkerId="w3",le="+Inf",model="image",replica="u1"} 2.0
ray_imgsound_unet_batch_samples_count{WorkerId="w3",model="image",replica="u1"} 2.0
ray_imgsound_unet_batch_samples_sum{WorkerId="w3",model="image",replica="u1"} 5.0
# HELP ray_tasks Ray's own series
# TYPE ray_tasks gauge
ray_tasks{State="RUNNING"} 7.0
"""
NODE_B = """# HELP ray_imgsound_samples_generated_total Samples generated and returned
# TYPE ray_imgsound_samples_generated_total counter
ray_imgsound_samples_generated_total{Component="core_worker",NodeAddress="10.0.0.2",WorkerId="w9",replica="r3"} 5.0
# HELP ray_imgsound_unet_batch_samples Samples in one UNet forward
# TYPE ray_imgsound_unet_batch_samples histogram
ray_imgsound_unet_batch_samples_bucket{WorkerId="w8",le="1.0",model="image",replica="u2"} 0.0
ray_imgsound_unet_batch_samples_bucket{WorkerId="w8",le="+Inf",model="image",replica="u2"} 1.0
ray_imgsound_unet_batch_samples_count{WorkerId="w8",model="image",replica="u2"} 1.0
ray_imgsound_unet_batch_samples_sum{WorkerId="w8",model="image",replica="u2"} 4.0
ray_imgsound_unet_batch_samples_bucket{WorkerId="w8",le="+Inf",model="audio",replica="u3"} 6.0
"""


def test_series_of_every_process_and_node_add_up():
    text = service_exposition([NODE_A, NODE_B])
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    assert "imgsound_samples_generated_total 12.0" in lines
    assert 'imgsound_unet_batch_samples_bucket{le="1.0",model="image"} 1.0' in lines
    assert 'imgsound_unet_batch_samples_bucket{le="+Inf",model="image"} 3.0' in lines
    assert 'imgsound_unet_batch_samples_bucket{le="+Inf",model="audio"} 6.0' in lines
    assert 'imgsound_unet_batch_samples_sum{model="image"} 9.0' in lines
    assert "# TYPE imgsound_samples_generated_total counter" in text
    assert "# TYPE imgsound_unet_batch_samples histogram" in text
    for process_label in ("WorkerId", "replica", "NodeAddress", "deployment", "Component"):
        assert process_label not in text
    assert "ray_tasks" not in text and "ray_imgsound" not in text  # only imgsound's own, under their own names


def test_buckets_come_in_numeric_order_and_nothing_is_nothing():
    text = service_exposition([NODE_A])
    buckets = [line for line in text.splitlines() if "_bucket" in line]
    assert buckets[0].startswith('imgsound_unet_batch_samples_bucket{le="1.0"') and "+Inf" in buckets[-1]
    assert service_exposition([]) == "\n"
