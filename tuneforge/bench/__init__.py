"""Benchmark stage: load a serving endpoint (or an in-process engine) and measure it.

    tuneforge bench --url http://127.0.0.1:8000 --api openai --model M --concurrency 1,4,16

The statistics (stats.py) and the report (report.py) are pure and import no torch; client.py drives the
load with httpx, resources.py samples CPU, memory and (through NVML) GPU use.
"""
