"""Restore many files on a pool of Ray actors, each holding one loaded bundle (load once, many files).

  python -m runtime.batch --engine engines/1080p.plan archive/ --out restored/
  python -m runtime.batch --engine B --input-list files.txt --out restored/ --address auto --workers 8
  python -m runtime.batch --engine B "clips/**/*.mov" --out restored/ --address ray://head:10001

Each file is restored exactly as `runtime.stream` restores it (the same restore_video, the same
frames, exact rate, colour tags and audio) into OUT, keeping its path relative to the inputs'
common folder. Outputs appear atomically: a worker writes a hidden temporary name and renames it
when the file is complete and undamaged. A worker that dies mid-file leaves nothing behind (its
temporary files are removed by name: they carry its process id) and the file goes to another
worker, at most --retries times. A file that is damaged or cannot be decoded fails alone.
A re-run skips files whose output exists (complete by construction), so a killed batch resumes.

Without --address a local Ray cluster is started for this run, with no dashboard, jobs API or
Ray Client server. Ray's endpoints must never face an untrusted network (README).
Two inputs that would share an output (a.mp4 and a.mkv with --ext .mkv) are refused before
anything starts; an output folder inside the input folder is not searched for inputs. Ctrl-C or
SIGTERM stops the batch: the files in progress are abandoned (nothing partial is left), the
summary and report say what finished.
Exit status: 0 every file ok or skipped; 1 some file failed; 2 bad arguments; 128+N after signal N.
"""
from .jobs import FileJob, FileResult, find_inputs, plan_jobs, remove_temporaries
from .pool import BatchRun, WorkerSlot, connect_ray
from .worker import RestoreWorker, restore_file

__all__ = ["BatchRun", "FileJob", "FileResult", "RestoreWorker", "WorkerSlot", "connect_ray", "find_inputs",
           "plan_jobs", "remove_temporaries", "restore_file"]
