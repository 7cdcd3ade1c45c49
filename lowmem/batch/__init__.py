"""`lowmem batch`: many edits from a jobs file, in this process or over a Ray cluster, resumable."""

from lowmem.batch.driver import BatchDriver
from lowmem.batch.execute import BatchSettings
from lowmem.batch.jobs import BadJob, Job, JobError, read_jobs
from lowmem.batch.report import REPORT_NAME

__all__ = ["BadJob", "BatchDriver", "BatchSettings", "Job", "JobError", "REPORT_NAME", "read_jobs"]
