"""The ``crosscheck`` command line.

Every sub-command exits 0 on success (flagged or not), 2 with one readable line
on stderr for unusable input (a bad file, a missing folder, an invalid Bundle),
and 1 with one line for an internal error; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from plugin.errors import PluginError, UsageError
from plugin.servers import add_server_arguments

if TYPE_CHECKING:
    from connectors.domain import SiteProfile
    from plugin.sweep import SweepUnit

__all__ = ["UsageError", "build_parser", "main"]

_TRAIN_VERSION = "0.1.0"  # what `crosscheck train` writes into a bundle unless told

logger = logging.getLogger(__name__)


def _cmd_simulate(args: argparse.Namespace) -> int:
    from fusion.cohort.simulate import simulate

    if args.patients < 1:
        raise UsageError("--patients must be at least 1")
    if not 0.0 <= args.manipulated_rate <= 1.0:
        raise UsageError("--manipulated-rate must be between 0 and 1")
    manifest = simulate(
        Path(args.out),
        patients=args.patients,
        seed=args.seed,
        manipulated_rate=args.manipulated_rate,
        workers=args.workers,
        progress=not args.quiet,
        families=tuple(f for f in args.families.split(",") if f) if args.families else None,
        nuisance_rate=args.nuisance_rate,
    )
    print(f"wrote a cohort of {args.patients} patients to {args.out} (labels in {manifest})")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from plugin.check import run_check, run_check_remote
    from plugin.servers import server_settings

    settings = server_settings(args)
    remote = any((settings.fhir_url, settings.dicomweb_url, settings.dimse, args.patient, args.study))
    common: dict[str, Any] = dict(
        output_format=args.format,
        site_path=Path(args.site) if args.site else None,
        archive=Path(args.archive) if args.archive else None,
        model=Path(args.model) if args.model else None,
        device=args.device,
        explain=Path(args.explain) if args.explain else None,
    )
    if remote:
        if args.dicom or args.bundle:
            raise UsageError(
                "check files (--dicom, --bundle) or servers (--fhir, --dicomweb, --dimse), not both"
            )
        return run_check_remote(
            settings=settings,
            patient=args.patient,
            study=args.study,
            strictness=args.strictness or "warn",
            keep=Path(args.keep) if args.keep else None,
            **common,
        )
    if not args.dicom:
        raise UsageError("give --dicom PATH (files) or --fhir/--dicomweb/--dimse with --patient (servers)")
    return run_check(
        bundle=Path(args.bundle) if args.bundle else None,
        dicom=Path(args.dicom),
        strictness=args.strictness or "raise",
        **common,
    )


def _cmd_load(args: argparse.Namespace) -> int:
    from plugin.load import run_load
    from plugin.servers import server_settings

    report = run_load(
        settings=server_settings(args),
        data=Path(args.data),
        endpoint=args.link_endpoint,
        progress=not args.quiet,
    )
    print(
        f"loaded {report.bundles} Bundles ({report.resources} resources) "
        f"and {report.instances} DICOM instances"
    )
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    import asyncio

    from connectors.fhir.bulk import bulk_export
    from plugin.servers import server_settings

    settings = server_settings(args)
    types = tuple(t for t in (args.type or "").split(",") if t)

    async def run() -> int:
        async with settings.fhir_client() as fhir:
            export = await bulk_export(
                fhir, Path(args.out), level=args.level, group_id=args.group, types=types
            )
        total = sum(export.counts.values())
        print(
            f"exported {total} resources in {len(export.files)} NDJSON files to {args.out}"
            + (f" ({len(export.errors)} error files)" if export.errors else "")
        )
        return 0

    if args.level == "group" and not args.group:
        raise UsageError("--level group needs --group ID")
    return asyncio.run(run())


def _cmd_train(args: argparse.Namespace) -> int:
    if args.labels is not None or args.studies is not None:
        return _train_on_labels(args)
    if args.model is not None:
        raise UsageError("--model is the bundle to fine-tune: give it with --labels and --studies")
    from plugin.training import run_train

    return run_train(
        data=Path(args.data),
        out=Path(args.out),
        config_name=args.config,
        epochs=args.epochs if args.epochs is not None else 12,
        batch_size=args.batch_size if args.batch_size is not None else 32,
        device=args.device,
        seed=args.seed,
        resume=args.resume,
        eval_data=Path(args.eval_data) if args.eval_data else None,
        progress=not args.quiet,
        work=Path(args.work) if args.work else None,
        exclude_families=tuple(f for f in (args.exclude_family or "").split(",") if f),
        version=args.version,
    )


def _train_on_labels(args: argparse.Namespace) -> int:
    """``crosscheck train --labels FILE --studies DIR``: `crosscheck finetune` with --data as the
    replay cohort (the issue's "labels that crosscheck train can use to fine-tune")."""
    if args.labels is None or args.studies is None:
        raise UsageError("to fine-tune on investigators' labels give both --labels and --studies")
    if args.resume or args.exclude_family or args.eval_data or args.config != "small":
        raise UsageError("--resume, --exclude-family, --eval-data and --config are for training from scratch")
    from plugin.finetune import run_finetune

    return run_finetune(
        labels=Path(args.labels),
        studies=Path(args.studies),
        out=Path(args.out),
        model=Path(args.model) if args.model else None,
        data=Path(args.data),
        epochs=args.epochs if args.epochs is not None else 5,
        batch_size=args.batch_size if args.batch_size is not None else 16,
        seed=args.seed,
        device=args.device,
        version=None if args.version == _TRAIN_VERSION else args.version,
        progress=not args.quiet,
    )


def _cmd_finetune(args: argparse.Namespace) -> int:
    from plugin.finetune import run_finetune
    from plugin.servers import ServerSettings, server_settings

    studies: Path | ServerSettings
    if args.studies is not None:
        if args.dicomweb or args.fhir:
            raise UsageError("give --studies FOLDER or the servers (--dicomweb, --fhir), not both")
        studies = Path(args.studies)
    else:
        studies = server_settings(args)
        if studies.dicomweb_url is None:
            raise UsageError(
                "give --studies FOLDER, or --dicomweb URL (with --fhir URL for the records) to fetch the "
                "labelled studies from the PACS"
            )
    return run_finetune(
        labels=Path(args.labels),
        studies=studies,
        out=Path(args.out),
        model=Path(args.model) if args.model else None,
        data=Path(args.data) if args.data else None,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        replay_ratio=args.replay_ratio,
        calibration_cases=args.calibration_cases,
        seed=args.seed,
        device=args.device,
        version=args.version,
        strictness=args.strictness,
        progress=not args.quiet,
    )


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from plugin.training import run_evaluate

    return run_evaluate(
        data=Path(args.data),
        model=Path(args.model) if args.model else None,
        device=args.device,
        out=Path(args.out) if args.out else None,
        progress=not args.quiet,
    )


def _cmd_demo(args: argparse.Namespace) -> int:
    from plugin.demo import run_demo

    return run_demo(
        out=Path(args.out),
        patients=args.patients,
        seed=args.seed,
        model=Path(args.model) if args.model else None,
        device=args.device,
        progress=not args.quiet,
    )


#: ``crosscheck sweep`` options that pick studies on the servers (not given: None or empty).
_SWEEP_SERVER_OPTIONS = (
    "date_from",
    "date_to",
    "modality",
    "patient",
    "patients_file",
    "accession",
    "accessions_file",
    "study_uid",
    "study_uids_file",
    "fhir",
    "dicomweb",
)


def _cmd_sweep(args: argparse.Namespace) -> int:
    from plugin.cases.evidence import KeptEvidence
    from plugin.settings import Settings
    from plugin.store import Store
    from plugin.sweep import export_results, run_sweep, units_from_folder

    if args.workers < 1 or args.batch_size < 1:
        raise UsageError("--workers and --batch-size must be at least 1")
    if args.export and Path(args.export).suffix.lower() not in (".parquet", ".csv"):
        raise UsageError(f"--export {args.export}: give a .parquet or .csv file name")
    servers = [f"--{o.replace('_', '-')}" for o in _SWEEP_SERVER_OPTIONS if getattr(args, o)]
    if args.path is not None and servers:
        raise UsageError(f"sweep a FOLDER or the servers, not both: {args.path} given with {servers[0]}")
    if args.path is None and not servers:
        raise UsageError(
            "give a FOLDER to sweep, or the filters of a server sweep: --date-from/--date-to, "
            "--modality, --patient (or --patients-file), --accession (or --accessions-file), "
            "--study-uid (or --study-uids-file)"
        )
    with ExitStack() as stack:
        if args.path is not None:
            found = units_from_folder(
                Path(args.path), site_path=Path(args.site) if args.site else None, strictness=args.strictness
            )
            units, site, description = found.units, found.site, f"folder {found.root}"
        else:
            from plugin.sweep.fetch import download_cache

            cache = stack.enter_context(download_cache(Path(args.data_dir)))
            units, description = _server_units(args, cache)
            site = _site(args)
        database = args.database_url or Settings(data_dir=Path(args.data_dir)).database
        store = stack.enter_context(Store.open(database))
        report = run_sweep(
            units,
            store=store,
            description=description,
            site=site,
            model=Path(args.model) if args.model else None,
            device=args.device,
            workers=args.workers,
            batch_size=args.batch_size,
            strictness=args.strictness,
            ray=args.ray,
            duplicates=not args.no_duplicates,
            progress=not args.quiet,
            evidence=KeptEvidence(Path(args.data_dir)),  # the flagged studies' images, for /review
        )
        print(
            f"swept {report.studies} studies with {report.model.name} {report.model.version}: "
            f"{report.stored} scored and stored, {report.done_before} done before, "
            f"{report.failed} unreadable "
            f"({report.seconds:.1f} s); results in {store.url}"
        )
        if args.export:
            rows = export_results(
                store.swept_results(report.model.sha256, [u.fingerprint for u in units]),
                Path(args.export),
            )
            print(f"exported {rows} rows to {args.export}")
    return 1 if report.failed else 0


def _server_units(args: argparse.Namespace, cache: Path) -> tuple[tuple[SweepUnit, ...], str]:
    """A server sweep's units (``sweep`` without a FOLDER) and its description (no identifiers)."""
    from connectors.http import redact_url
    from plugin.servers import server_settings
    from plugin.sweep.servers import StudySelection, parse_study_date, read_identifiers, units_from_servers

    patients = list(args.patient or [])
    if args.patients_file:
        patients += read_identifiers(Path(args.patients_file), "--patients-file")
    accessions = list(args.accession or [])
    if args.accessions_file:
        accessions += read_identifiers(Path(args.accessions_file), "--accessions-file")
    uids = list(args.study_uid or [])
    if args.study_uids_file:
        uids += read_identifiers(Path(args.study_uids_file), "--study-uids-file")
    selection = StudySelection(
        date_from=parse_study_date(args.date_from, "--date-from") if args.date_from else None,
        date_to=parse_study_date(args.date_to, "--date-to") if args.date_to else None,
        modalities=tuple(args.modality or ()),
        patient_ids=tuple(patients),
        accession_numbers=tuple(accessions),
        study_instance_uids=tuple(uids),
    )
    settings = server_settings(args)
    units = units_from_servers(settings, selection, cache=cache)
    return units, f"servers {redact_url(settings.dicomweb_url or '')}: {selection.describe()}"


def _site(args: argparse.Namespace) -> SiteProfile | None:
    from plugin.check import load_site

    return load_site(Path(args.site)) if args.site else None


def _cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from plugin.servers import server_settings
    from plugin.service.app import create_app
    from plugin.settings import load_settings

    settings = load_settings(
        {name: getattr(args, name) for name in _SERVE_OPTIONS},
        config_file=Path(args.config) if args.config else None,
    )
    app = create_app(settings, server_settings(args))
    # proxy_headers off: the app believes X-Forwarded-For from its ``trusted_proxies`` only, and uvicorn
    # would from 127.0.0.1 (FORWARDED_ALLOW_IPS) whatever the settings say
    uvicorn.run(
        app, host=settings.host, port=settings.port, log_config=None, access_log=False, proxy_headers=False
    )
    return 0


def _cmd_api_key(args: argparse.Namespace) -> int:
    import json
    import secrets

    from plugin.service.auth import hash_api_key

    key = secrets.token_urlsafe(32)
    print(f"key (give it to the caller, once): {key}")
    print(f"keys file entry: {json.dumps({args.name: hash_api_key(key)})}")
    return 0


def _store_settings(args: argparse.Namespace) -> Any:
    """The settings of a command with `_add_database_arguments` (``CROSSCHECK_*`` under them)."""
    from plugin.settings import load_settings

    return load_settings({"database_url": args.database_url, "data_dir": args.data_dir})


def _open_store(args: argparse.Namespace) -> Any:
    """The plugin's database of ``--database-url``, else of the settings (``CROSSCHECK_*``)."""
    from plugin.store import Store

    return Store.open(_store_settings(args).database)


def _cmd_labels(args: argparse.Namespace) -> int:
    import json

    from plugin.store import Actor, ActorKind, AuditAction, CaseQueue

    with _open_store(args) as store:
        labels = CaseQueue(store).training_labels()
        out = Path(args.out)
        out.write_text(json.dumps({"labels": [label.to_json() for label in labels]}, indent=1) + "\n")
        store.audit(AuditAction.LABELS_EXPORT, Actor(ActorKind.SYSTEM, "cli"), detail={"labels": len(labels)})
    print(f"wrote {len(labels)} labels to {out}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from plugin.review.report import write_report
    from plugin.store import Store

    ids = []
    for given in args.case_ids:
        if not given.isdigit():
            raise UsageError(f"{given!r} is not a case id: give the numbers the review page's queue shows")
        ids.append(int(given))
    settings = _store_settings(args)
    with Store.open(settings.database) as store:
        out = write_report(ids, Path(args.out), store=store, data_dir=settings.data_dir)
    print(f"wrote the report of {len(set(ids))} case{'' if len(set(ids)) == 1 else 's'} to {out}")
    return 0


def _new_password() -> str:
    import getpass
    import os

    given = os.environ.get("CROSSCHECK_NEW_PASSWORD")
    if given:
        return given
    if not sys.stdin.isatty():
        raise UsageError("no terminal to ask the password on: set CROSSCHECK_NEW_PASSWORD")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise UsageError("the two passwords differ")
    return first


def _cmd_users(args: argparse.Namespace) -> int:
    from plugin.review.session import load_secret
    from plugin.store import Actor, ActorKind, AuditAction, LoginThrottle, UserRole, Users

    cli = Actor(ActorKind.SYSTEM, "cli")
    with _open_store(args) as store:
        users = Users(store)
        if args.action == "unlock":  # the name's failed logins forgotten, its lock-out lifted
            secret = load_secret(_store_settings(args).data_dir)
            LoginThrottle(store, secret).succeeded(args.name, None)
            store.audit(AuditAction.USER_UNLOCK, cli, detail={"user": args.name})
            print(f"unlocked {args.name}")
            return 0
        if args.action == "list":
            for user in users.users():
                state = "active" if user.active else "disabled"
                print(f"{user.user_name}\t{user.role}\t{state}\t{user.display_name or ''}")
            return 0
        if args.action == "add":
            role = UserRole.ADMIN if args.admin else UserRole.INVESTIGATOR
            try:
                user = users.create_user(
                    args.name, _new_password(), display_name=args.display_name, role=role
                )
            except ValueError as exc:
                raise UsageError(str(exc)) from None
            store.audit(
                AuditAction.USER_CREATE, cli, detail={"user": user.user_name, "role": user.role.value}
            )
            print(f"added {user.role} {user.user_name}")
            return 0
        user = users.deactivate_user(args.name)
        store.audit(AuditAction.USER_DISABLE, cli, detail={"user": user.user_name})
        print(f"disabled {user.user_name}")
        return 0


def _add_database_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--database-url",
        "--database",
        dest="database_url",
        help="the plugin's database: SQLAlchemy URL or SQLite path (default: crosscheck.db in --data-dir) "
        "[CROSSCHECK_DATABASE_URL]",
    )
    p.add_argument(
        "--data-dir", help="the service's data folder (default ./crosscheck-data) [CROSSCHECK_DATA_DIR]"
    )


#: ``crosscheck serve`` options that are `plugin.settings.Settings` fields (None: not given).
_SERVE_OPTIONS = (
    "host",
    "port",
    "public_url",
    "data_dir",
    "database_url",
    "model",
    "device",
    "cds_clients",
    "insecure_no_auth",
    "api_keys",
    "say_consistent",
    "smart_app_url",
    "writeback_fhir",
    "writeback_sr",
    "orthanc_url",
    "cds_deadline_ms",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crosscheck",
        description="Check whether medical images are consistent with the patient's record.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=None,
        help="log lines as text (default) or one JSON object per line [CROSSCHECK_LOG_FORMAT]",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func)
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
        return p

    p = add("simulate", _cmd_simulate, "Write a simulated cohort: FHIR R4 Bundles, DICOM files, manifest.")
    p.add_argument("--out", required=True, help="folder to write (new or a previous cohort)")
    p.add_argument("--patients", type=int, default=200, help="number of patients (default 200)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same cohort")
    p.add_argument("--manipulated-rate", type=float, default=0.3, help="share of manipulated studies")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: all cores)")
    p.add_argument(
        "--families",
        help="generator families for the pixel manipulations, comma-separated (default: every one "
        "available): vae, gan, diffusion, blend, membrane, copy-move",
    )
    p.add_argument(
        "--nuisance-rate",
        type=float,
        default=0.1,
        help="share of all studies (clean ones too) re-encoded or resized (default 0.1)",
    )

    p = add("check", _cmd_check, "Cross-check each DICOM study against the patient's record.")
    p.add_argument("--bundle", help="FHIR R4 Bundle (JSON) or NDJSON export with the patient's record")
    p.add_argument("--dicom", help="DICOM file or folder of studies")
    p.add_argument("--format", choices=("json", "text"), default="text", help="json: one object per line")
    p.add_argument("--site", help="site profile JSON (UID roots, known devices)")
    p.add_argument("--archive", help="folder of other studies to search for re-filed duplicates")
    p.add_argument("--model", help="model bundle folder (default: the bundled model)")
    p.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default: cuda if present)")
    p.add_argument(
        "--strictness",
        choices=("raise", "warn", "ignore"),
        help="an invalid FHIR resource or unreadable DICOM file: stop with an error (raise), "
        "skip it with a warning (warn), or skip it silently but still list it in the record (ignore); "
        "default raise for files, warn for servers",
        default=None,
    )
    p.add_argument("--patient", help="FHIR Patient id (DICOM PatientID when there is no --fhir)")
    p.add_argument("--study", help="StudyInstanceUID: check only this study")
    p.add_argument("--keep", help="keep the fetched DICOM files in this folder")
    p.add_argument(
        "--explain",
        metavar="DIR",
        help="write <StudyInstanceUID>.png (tamper heatmap over the image) and .txt (why) per study",
    )
    add_server_arguments(p)

    p = add("load", _cmd_load, "Load a cohort folder into a FHIR server (transactions) and a PACS (STOW-RS).")
    p.add_argument("data", help="cohort folder (from `crosscheck simulate`)")
    p.add_argument(
        "--link-endpoint",
        metavar="DICOMWEB_URL",
        help="add an Endpoint with this DICOMweb address and point every ImagingStudy at it",
    )
    add_server_arguments(p, dimse=False)

    p = add(
        "export", _cmd_export, "Run a FHIR Bulk Data $export and write its NDJSON files (for check --bundle)."
    )
    p.add_argument("--out", required=True, help="folder for the NDJSON files")
    p.add_argument("--level", choices=("system", "patient", "group"), default="patient")
    p.add_argument("--group", help="Group id, with --level group")
    p.add_argument("--type", help="comma-separated resource types (default: all)")
    add_server_arguments(p, dimse=False)

    p = add(
        "train",
        _cmd_train,
        "Train the fusion model on a cohort folder and write a model bundle "
        "(to fine-tune one on investigators' labels: `crosscheck finetune`).",
    )
    p.add_argument("--data", required=True, help="cohort folder (from `crosscheck simulate`)")
    p.add_argument("--eval-data", help="held-out cohort for the model card (default: a split of --data)")
    p.add_argument("--out", default="model-bundle", help="bundle folder to write (default ./model-bundle)")
    p.add_argument("--config", default="small", help="named model config (default small)")
    p.add_argument("--epochs", type=int, default=None, help="default 12 (5 with --labels)")
    p.add_argument("--batch-size", type=int, default=None, help="default 32 (16 with --labels)")
    g = p.add_argument_group(
        "fine-tuning on investigators' labels (as `crosscheck finetune`, --data the replay cohort)"
    )
    g.add_argument("--labels", help="labels file written by `crosscheck labels --out`")
    g.add_argument("--studies", help="folder holding the labelled studies (the folder a sweep scored)")
    g.add_argument("--model", help="model bundle to fine-tune (default: the bundled model)")
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", help="folder for checkpoints and caches (default: <out>-work)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in the --work folder")
    p.add_argument(
        "--version",
        default=_TRAIN_VERSION,
        help=f"version written into the bundle (default {_TRAIN_VERSION}; with --labels the parent's "
        "+ft.<labels sha256>)",
    )
    p.add_argument(
        "--exclude-family",
        help="leave these generator families (comma-separated, e.g. gan) out of training, "
        "to measure detection of a family the model never saw",
    )

    p = add(
        "finetune",
        _cmd_finetune,
        "Fine-tune a model bundle on the investigators' labels (`crosscheck labels`): each label's study "
        "found by StudyInstanceUID in --studies (or on the PACS and FHIR server), mixed with replay of "
        "the training cohort (--data).",
    )
    p.add_argument("--labels", required=True, help="labels file written by `crosscheck labels --out`")
    p.add_argument(
        "--studies",
        help="folder holding the labelled studies: the folder a sweep scored, a cohort folder, or any "
        "folder of FHIR Bundles and DICOM (as `crosscheck check` reads); without it, they are fetched "
        "from the PACS (--dicomweb) by StudyInstanceUID, their records from the FHIR server (--fhir)",
    )
    p.add_argument("--model", help="model bundle to start from (default: the bundled model)")
    p.add_argument(
        "--data",
        help="the cohort the model was trained on (manifest labels): replay cases mixed in, and held-out "
        "cases to fit the calibration again (default: none; the parent's calibration is kept)",
    )
    p.add_argument(
        "--out", default="model-finetuned", help="bundle folder to write (default ./model-finetuned)"
    )
    p.add_argument("--epochs", type=int, default=5, help="passes over labelled + replay cases (default 5)")
    p.add_argument(
        "--lr", type=float, default=5e-4, help="peak learning rate (default 5e-4, a quarter of training's)"
    )
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--replay-ratio", type=int, default=3, help="replay cases per labelled study (default 3)")
    p.add_argument(
        "--calibration-cases",
        type=int,
        default=200,
        help="held-out cases of --data to fit the calibration on (default 200; fewer than 20 clean: kept)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--version", help="version of the new bundle (default: the parent's +ft.<labels sha256>)")
    p.add_argument(
        "--strictness",
        choices=("raise", "warn", "ignore"),
        default="warn",
        help="an invalid FHIR resource or DICOM file in --studies: stop (raise) or skip it (warn, ignore)",
    )
    add_server_arguments(p, dimse=False)

    p = add("evaluate", _cmd_evaluate, "Evaluate a model bundle on a labelled cohort folder.")
    p.add_argument("--data", required=True, help="cohort folder with manifest labels")
    p.add_argument("--model", help="model bundle folder (default: the bundled model)")
    p.add_argument("--out", help="write the report (JSON and Markdown) into this folder")
    p.add_argument("--device", default=None)

    p = add("demo", _cmd_demo, "Simulate a small cohort, check every case, print figures, write HTML.")
    p.add_argument("--out", default="crosscheck-demo", help="output folder (default ./crosscheck-demo)")
    p.add_argument("--patients", type=int, default=60)
    p.add_argument("--seed", type=int, default=20261125, help="cohort seed (never used in training)")
    p.add_argument("--model", help="model bundle folder (default: the bundled model)")
    p.add_argument("--device", default=None)

    p = add(
        "sweep",
        _cmd_sweep,
        "Score every study of a folder (Bundles + DICOM, or a cohort folder), or the studies of a PACS "
        "(DICOMweb) that match the filters with their records from the FHIR server, into the database, "
        "resumably.",
    )
    p.add_argument(
        "path", nargs="?", help="folder: a cohort (manifest.json) or FHIR Bundles and DICOM studies"
    )
    g = p.add_argument_group("a server sweep (no FOLDER): the PACS's studies that match every filter given")
    g.add_argument("--date-from", metavar="YYYY-MM-DD", help="StudyDate on or after this day")
    g.add_argument("--date-to", metavar="YYYY-MM-DD", help="StudyDate on or before this day")
    g.add_argument(
        "--modality", action="append", metavar="CODE", help="ModalitiesInStudy, e.g. CT (repeatable: any of)"
    )
    g.add_argument(
        "--patient",
        action="append",
        metavar="ID",
        help="DICOM PatientID as the PACS files studies (usually the MRN; repeatable: any of)",
    )
    g.add_argument("--patients-file", metavar="FILE", help="PatientIDs, one a line (# comments)")
    g.add_argument("--accession", action="append", metavar="N", help="AccessionNumber (repeatable: any of)")
    g.add_argument("--accessions-file", metavar="FILE", help="AccessionNumbers, one a line (# comments)")
    g.add_argument(
        "--study-uid", action="append", metavar="UID", help="StudyInstanceUID (repeatable: any of)"
    )
    g.add_argument("--study-uids-file", metavar="FILE", help="StudyInstanceUIDs, one a line (# comments)")
    p.add_argument("--site", help="site profile JSON (default: the folder's site.json, if any)")
    p.add_argument("--model", help="model bundle folder (default: the bundled model)")
    p.add_argument("--device", default=None, help="torch device for the model (default: cuda if present)")
    p.add_argument("--workers", type=int, default=2, help="reader processes (default 2)")
    p.add_argument("--batch-size", type=int, default=16, help="studies per model batch (default 16)")
    p.add_argument(
        "--data-dir",
        default="crosscheck-data",
        help="the service's data folder: the database, and the images and heatmaps of the flagged "
        "studies, which the review page shows (default ./crosscheck-data)",
    )
    p.add_argument("--database-url", help="SQLAlchemy URL (default SQLite in --data-dir)")
    p.add_argument("--ray", metavar="ADDRESS", help="run on a Ray cluster (auto: start a local one)")
    p.add_argument("--export", metavar="FILE", help="also write the results as .parquet or .csv")
    p.add_argument("--no-duplicates", action="store_true", help="skip the re-filed duplicate check")
    p.add_argument(
        "--strictness",
        choices=("raise", "warn", "ignore"),
        default="warn",
        help="an invalid FHIR resource or DICOM file: stop that study (raise) or skip it (warn, ignore)",
    )
    add_server_arguments(p, dimse=False)

    p = add("serve", _cmd_serve, "Serve CDS Hooks 2.0 services and the REST API (FastAPI under uvicorn).")
    p.add_argument("--config", help="settings file, TOML or JSON [CROSSCHECK_CONFIG]")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1) [CROSSCHECK_HOST]")
    p.add_argument("--port", type=int, help="port (default 8080) [CROSSCHECK_PORT]")
    p.add_argument("--public-url", help="base URL clients use, for links and token audiences")
    p.add_argument("--data-dir", help="database, image cache, heatmaps (default ./crosscheck-data)")
    p.add_argument("--database-url", help="SQLAlchemy URL (default SQLite in --data-dir)")
    p.add_argument("--model", help="model bundle folder (default: the bundled model)")
    p.add_argument("--device", help="torch device (default: cuda if present)")
    p.add_argument("--cds-clients", help="allow-list of CDS clients, JSON [CROSSCHECK_CDS_CLIENTS]")
    p.add_argument(
        "--insecure-no-auth",
        action="store_const",
        const=True,
        default=None,
        help="serve without authentication (tests only; logs a warning)",
    )
    p.add_argument("--api-keys", help='REST API keys file {"name": "sha256:<hex>"} (see `api-key`)')
    p.add_argument(
        "--say-consistent", action="store_const", const=True, default=None, help="a card when all is well"
    )
    p.add_argument("--smart-app-url", help="SMART app launch URL for card links")
    p.add_argument(
        "--writeback-fhir", action="store_const", const=True, default=None, help="post DetectedIssue"
    )
    p.add_argument("--writeback-sr", action="store_const", const=True, default=None, help="store a DICOM SR")
    p.add_argument("--orthanc-url", help="Orthanc REST base: score new studies from its change feed")
    p.add_argument("--cds-deadline-ms", type=int, help="scoring time a hook call may spend (default 350)")
    add_server_arguments(p)

    p = add("labels", _cmd_labels, "Export training labels from dispositions and CDS Hooks feedback (JSON).")
    p.add_argument("--out", required=True, help="JSON file to write")
    _add_database_arguments(p)

    p = add(
        "report",
        _cmd_report,
        "Write a self-contained case report (HTML, or PDF with Playwright and chromium) for a file or a "
        "referral: images, heatmap, scores, evidence, record items, disposition history.",
    )
    p.add_argument("case_ids", nargs="+", metavar="CASE_ID", help="case ids, as the review page shows them")
    p.add_argument("--out", required=True, help="file to write: .html, or .pdf (printed by Chromium)")
    _add_database_arguments(p)

    p = add("users", _cmd_users, "Manage the investigators' logins of the review page.")
    users = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    u = users.add_parser("add", help="add a login (password: a prompt, or CROSSCHECK_NEW_PASSWORD)")
    u.add_argument("name", help="user name: letters, digits, . _ @ -")
    u.add_argument("--admin", action="store_true", help="may manage users (default: investigator)")
    u.add_argument("--display-name", help="the name the review page shows")
    _add_database_arguments(u)
    u = users.add_parser("list", help="list the logins")
    _add_database_arguments(u)
    u = users.add_parser("disable", help="refuse a login from now on (its history stays)")
    u.add_argument("name")
    _add_database_arguments(u)
    u = users.add_parser("unlock", help="lift a login's lock-out after failed passwords (needs --data-dir)")
    u.add_argument("name")
    _add_database_arguments(u)

    p = add("api-key", _cmd_api_key, "Make a REST API key: prints the key and the line for the keys file.")
    p.add_argument("--name", required=True, help="the caller's name (in the audit trail)")
    return parser


def _configure_logging(verbose: int, log_format: str = "text") -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    if log_format == "json":  # one JSON object per line, for a log collector
        from pythonjsonlogger.json import JsonFormatter

        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
        logging.basicConfig(level=level, handlers=[handler])
    else:
        logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from connectors.privacy import quiet_third_party_loggers

    quiet_third_party_loggers()  # they log query URLs and DICOM identifiers, which carry patient data


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or exc.__class__.__name__


def _terminate_like_interrupt() -> None:
    """SIGTERM (a service manager, ``kill PID``) ends a command the way Ctrl-C does: worker pools are
    shut down and nothing keeps writing after the command has gone."""
    import signal
    import threading

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    import os

    _configure_logging(args.verbose, args.log_format or os.environ.get("CROSSCHECK_LOG_FORMAT") or "text")
    _terminate_like_interrupt()
    from connectors.errors import ConnectorError
    from fusion.errors import FusionError
    from plugin.cohort import CohortError

    try:
        code: int = args.func(args)
        return code
    except (
        PluginError,
        ConnectorError,
        FusionError,
        CohortError,
        FileNotFoundError,
        IsADirectoryError,
    ) as exc:
        if args.debug:
            raise
        print(f"crosscheck {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"crosscheck {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        print(
            f"crosscheck {args.command}: internal error ({exc.__class__.__name__}): {_one_line(exc)}; "
            "rerun with --debug for the traceback",
            file=sys.stderr,
        )
        return 1
