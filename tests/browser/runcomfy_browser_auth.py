"""An auth manager for the browser tests: Airflow's SimpleAuthManager, with one DAG kept from one user.

SimpleAuthManager lets every user read every DAG; a real deployment (FAB, Keycloak) can
restrict a user to some DAGs. This subclass does that for the user ``outsider`` and the
DAG ``runcomfy_ui`` -- the decision Airflow's ``requires_access_dag`` asks the auth manager
for -- so the tests can show that the outputs view refuses a logged-in user who may not
read the DAG. Login, tokens and cookies are SimpleAuthManager's own.
"""

from __future__ import annotations

from typing import Any

from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager

#: (user, DAG) pairs refused: ``outsider`` may not read the UI's DAG; ``attacker`` may read
#: only ``runcomfy_attacker`` (``test_cross_dag``).
REFUSED = {
    ("outsider", "runcomfy_ui"),
    ("attacker", "runcomfy_ui"),
    ("attacker", "runcomfy_review"),
    ("attacker", "runcomfy_batch20"),
}


class DagScopedAuthManager(SimpleAuthManager):
    """SimpleAuthManager, except for the (user, DAG) pairs in ``REFUSED``."""

    def is_authorized_dag(
        self, *, method: Any, user: Any, access_entity: Any = None, details: Any = None
    ) -> bool:
        dag_id = getattr(details, "id", None)
        if (user.get_name(), dag_id) in REFUSED:
            return False
        return super().is_authorized_dag(
            method=method, user=user, access_entity=access_entity, details=details
        )

    def filter_authorized_dag_ids(self, *, dag_ids: set[str], user: Any, **kwargs: Any) -> set[str]:
        allowed = super().filter_authorized_dag_ids(dag_ids=dag_ids, user=user, **kwargs)
        return {dag_id for dag_id in allowed if (user.get_name(), dag_id) not in REFUSED}
