"""The Airflow DAGs of sassflow (a DAG bundle: deploy this folder). They wire tasks only; each task calls a plain function of the product packages."""
