"""Translates template.yaml with SAM's own translator (samtranslator, from
the pinned SAM CLI) and checks the HTTP API's CORS as API Gateway will get
it: none without CorsAllowOrigins, exactly the named origins with it.
CorsConfiguration cannot be left out by a condition (SAM resolves it at
transform time), so the template sets x-amazon-apigateway-cors itself."""
import json
import os
import re
import sys

from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse


class NoManagedPolicies:
    def load(self):
        return {}


def cors(parameters):
    # Local paths are uploaded by `sam deploy`; the translator wants S3 URIs.
    text = re.sub(r"CodeUri: .*", "CodeUri: s3://bucket/key", open(sys.argv[1]).read())
    out = transform(yaml_parse(text), parameters, NoManagedPolicies())
    apis = [r for r in out["Resources"].values() if r["Type"] == "AWS::ApiGatewayV2::Api"]
    assert len(apis) == 1, apis
    return apis[0]["Properties"]["Body"].get("x-amazon-apigateway-cors")


def resolve(value, parameters):
    """CloudFormation's part: the condition and the split."""
    if isinstance(value, dict) and "Fn::If" in value:
        _, yes, no = value["Fn::If"]
        chosen = yes if parameters.get("CorsAllowOrigins", "") != "" else no
        return resolve(chosen, parameters)
    if isinstance(value, dict) and value == {"Ref": "AWS::NoValue"}:
        return None
    if isinstance(value, dict) and "Fn::Split" in value:
        sep, ref = value["Fn::Split"]
        return parameters[ref["Ref"]].split(sep)
    if isinstance(value, dict):
        return {k: resolve(v, parameters) for k, v in value.items()}
    return value


os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
closed = resolve(cors({}), {})
assert closed is None, f"CORS without CorsAllowOrigins: {closed}"
given = {"CorsAllowOrigins": "https://ci.example.com,https://other.example"}
opened = resolve(cors(given), given)
assert opened["allowOrigins"] == ["https://ci.example.com", "https://other.example"], opened
assert "*" not in json.dumps(opened["allowOrigins"]), opened
assert "authorization" in opened["allowHeaders"], opened
print("template CORS: none by default; exactly CorsAllowOrigins when given")
